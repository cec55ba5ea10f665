SELECT * FROM samples MIX BY language USING ADO (prior = NATURAL, update_every = 1000)
