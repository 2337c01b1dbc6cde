"""`chatroom bench`: load a chat server and measure what it costs to fan messages out.

The load generator is written to be much cheaper than the server it measures:
raw asyncio protocols that parse frames inline, in separate client processes.
"""
