"""The browser chat demo (`demo.py`): Gradio components wired to plain handler functions.

The UI only renders a `chatbridge.inference.session.ChatSession`: it turns uploads into `MediaFile`s, generation
controls into `GenerationSettings`, and a session's streamed answer into chat messages. It sits with the entry
points (above inference) and, like the core, never imports `chatbridge.synthetic`.
"""
