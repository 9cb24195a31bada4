"""Information-sharing sheets: templates (Questionnaires in ``schemas/questionnaires``) and filled sheets."""
