-- error: Did you mean jsonl?
CREATE SOURCE web FROM 'data/*.json' FORMAT jsnl
