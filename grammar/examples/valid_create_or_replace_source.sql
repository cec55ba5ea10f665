CREATE OR REPLACE SOURCE web FROM 'data/web/*.jsonl.zst' WITH (properties = {'text_kind': 'meta.kind'}, score = 'meta.score?')
