"""Text databases: transcripts, WordPiece tokenisation, emotion lexicons, splits and
create-txtdb."""
