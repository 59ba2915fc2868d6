"""Control: the command processor, its CSR bus, and the CSR port adapters of the top level."""
