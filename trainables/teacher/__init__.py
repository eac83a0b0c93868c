"""The teacher: its frozen network and the teacher source methods read it through.

``source`` is what a method holds (``self.teacher``): outputs for a training batch, counted, from the
live network, the budget cache or the shared store, following a trajectory schedule where one is set.
``network`` is the frozen model; ``budget``, ``store`` and ``trajectory`` are the mechanisms the source
owns.
"""

from .network import FrozenTeacher, TeacherOutput, load_teacher_model
from .source import TeacherPlan, TeacherSource, build_source

__all__ = ["FrozenTeacher", "TeacherOutput", "TeacherPlan", "TeacherSource", "build_source", "load_teacher_model"]
