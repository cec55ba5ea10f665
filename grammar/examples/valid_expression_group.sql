SELECT * FROM samples MIX BY quality > 0.5 WITH (true 0.7, false 0.3)
