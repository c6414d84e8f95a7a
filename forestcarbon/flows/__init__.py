"""Prefect flows, the plain stage functions they wrap, and the Typer CLI."""
