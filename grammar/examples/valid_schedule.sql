SELECT * FROM samples
MIX BY language WITH SCHEDULE (
    AT STEP 0    (JavaScript 0.9, OTHER 0.1),
    AT STEP 5000 (JavaScript 0.5, OTHER 0.5)
)
SETTINGS (batch_size = 64)
