"""Stage logic: plain classes with no Ray and no HTTP in them, unit-tested in process."""
