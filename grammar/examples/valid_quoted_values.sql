SELECT language, quality FROM samples MIX BY language WITH ('JavaScript' 2, 'HTML' 1, 'Python' 1)
