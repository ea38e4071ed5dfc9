//! Weft's pure types (being filled by the workspace issue).
