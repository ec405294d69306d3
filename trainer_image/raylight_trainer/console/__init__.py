"""What the person who ran the command sees (the driver's side only; nothing in a worker imports it):

- `progress`: the live trial table or epoch bar, or a line per event where the output is no terminal.
- `summary`: the summary panel, or where an interrupted run stopped and how to resume it.
"""
