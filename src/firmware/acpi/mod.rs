//! ACPI table readers (filled in by the ACPI work).
