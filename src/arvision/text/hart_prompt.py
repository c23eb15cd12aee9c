"""The fixed instruction HART prepends to every prompt before running its Qwen2 text encoder.

No text is generated: the instruction only conditions the hidden states of the prompt tokens, which
are all that is kept. Reproduced verbatim from the official release, since the checkpoint was trained
with exactly these tokens in front of each prompt.
"""

HART_SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation.\n\n"
    "Examples:\n"
    "- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a round shape, sleeping peacefully "
    "on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street lamps, a "
    "diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.\n\n"
    "Please generate only the enhanced description for the prompt below and DO NOT include any additional "
    'sentences. Start your response with "Enhanced Prompt:".\n\n'
    "User Prompt:\n"
)
