//! ACPI tables for both architectures, encoded from the platform plan.
