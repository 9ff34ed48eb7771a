from raybilevel.registry import Registry

UNLEARNING: Registry = Registry("unlearning method")
