//! Virtual configuration space for an assigned VF (in progress).
