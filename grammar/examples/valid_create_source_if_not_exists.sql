CREATE SOURCE IF NOT EXISTS web FROM 'data/web/*.jsonl.zst'
