"""Reading runs back and drawing them: figures, tables and tree drawings (`tree_drawing`)."""
