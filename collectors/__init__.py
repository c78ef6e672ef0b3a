"""The built-in collectors: one module per source of inventory data (see evo_agent.collector)."""
