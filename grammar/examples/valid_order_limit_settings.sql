SELECT * FROM samples
MIX BY language WITH (JavaScript 0.5, HTML 0.3, Python 0.2)
ORDER BY quality DESC
LIMIT 2e9 TOKENS
SETTINGS (seed = 7, chunk_size = 512, unit = 'tokens', on_exhausted = 'repeat', max_epochs = 4)
