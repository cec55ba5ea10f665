SELECT * FROM samples
MIX BY language WITH (
    (JavaScript, HTML) 0.6,
    OTHER              0.4
)
