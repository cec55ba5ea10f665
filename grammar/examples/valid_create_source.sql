CREATE SOURCE web FROM 'data/web/*.jsonl.zst' FORMAT jsonl WITH (text = 'content', language = 'meta.lang', preset = 'slimpajama')
