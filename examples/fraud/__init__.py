"""Card-fraud scoring: a seeded data generator and a Feast feature repo over its output."""
