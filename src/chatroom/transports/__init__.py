"""Thin adapters from the broker's event stream to each technique's framing."""
