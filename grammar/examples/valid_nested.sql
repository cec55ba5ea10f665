SELECT * FROM samples
MIX BY language WITH (
    JavaScript 0.5 MIX BY license WITH (MIT 0.3, OTHER 0.7),
    (HTML, Python) 0.5
)
