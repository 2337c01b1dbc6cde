"""The pure core: events, positions, validation, rate limits, presence rules.

Nothing here does I/O or touches asyncio; everything takes its clock as an argument.
"""
