-- error: unknown mixing algorithm
SELECT * FROM samples MIX BY language USING ADOO (prior = NATURAL)
