//! Device-tree reader (filled in by the DT work).
