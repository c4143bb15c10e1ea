"""Example domains: bring-your-own events and models, end to end (docs/your_data.md)."""
