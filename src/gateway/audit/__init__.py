"""Audit sinks: durable bus subscribers that write events somewhere."""
