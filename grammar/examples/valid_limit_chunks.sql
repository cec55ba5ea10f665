SELECT * FROM samples MIX BY license WITH (MIT 1, CC 1) LIMIT 3 CHUNKS SETTINGS (chunk_size = 8)
