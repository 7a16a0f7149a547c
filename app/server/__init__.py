"""The server process: uvicorn's protocol with bounded request heads, and the command line."""
