from raybilevel.registry import Registry

SOLVERS: Registry = Registry("solver")
