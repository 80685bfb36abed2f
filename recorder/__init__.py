"""Recording of original PS bytes in segments, with an index, retention and tamper evidence."""
