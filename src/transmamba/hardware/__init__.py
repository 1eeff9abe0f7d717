"""The hardware the library meets: which precision runs (`precision`) and what the machine is (`machine`)."""
