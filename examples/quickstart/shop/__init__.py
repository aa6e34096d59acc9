"""A small online shop's order analytics, orchestrated by Servo."""
