"""Make the student: a trainable, usually smaller copy of the teacher UNet.

    from raybilevel.pruning import PRUNERS, prune, save_student, load_student, Student, model_stats

    student = prune(method, teacher, sparsity=0.5, seed=0, path="")
        A new model; the teacher is untouched (it may have requires_grad=False). Methods (PRUNERS.names()):
          magnitude  per-layer unstructured L1 masks on conv/linear weights, kept through training
          channels   block-internal widths (resnet inner channels, attention heads, feed-forward width);
                     every block's input/output channels equal the teacher's, for feature distillation
          blocks     BK-SDM: no mid block, one resnet(+attention) fewer per stage with >= 2 (sparsity ignored)
          load       a save_student folder or a diffusers UNet folder (safetensors only) at `path`
          none       a trainable copy of the teacher (the no-pruning control)
        An unknown method or a sparsity outside [0, 1) raises UserError.
    student.model              the UNet, requires_grad=True, in train mode
    student.description        JSON-serialisable: method, structure, sparsity, seed, config, per-method
                               shapes or notes, stats {"teacher": ..., "student": ...} (model_stats)
    student.apply_constraints()  after each optimizer step; re-zeroes magnitude's masked weights, else a no-op
    save_student(student, folder)  model.safetensors + student.json, written atomically (no pickle)
    load_student(folder)       the same student, outputs bit-identical; UserError if missing/corrupt/mismatched
    model_stats(model, sample_shape=(3, 16, 16), cross_dim=32, seq_len=12)
                               {"params", "nonzero_params", "macs"}: MACs of one forward at batch 1

A new method is one file: a function registered with PRUNERS.register(name) that returns a Student, and
(if its model is not a plain diffusers UNet) a rebuilder registered with REBUILDERS.register(structure).
"""
from raybilevel.pruning.base import PRUNERS, Student, load_student, model_stats, prune, save_student
from raybilevel.pruning import blocks, channels, load, magnitude, none  # noqa: F401  (each registers itself)

__all__ = ["PRUNERS", "Student", "load_student", "model_stats", "prune", "save_student"]
