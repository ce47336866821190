"""Live control of a topology's variants through its compacted control topic."""
