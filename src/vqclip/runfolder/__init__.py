"""The run folder, the unit of record, as one package: the names of its files (`names`), the typed record in
details.json (`record`), the engine state in state.pt (`state`), the folder being written and the one safe
reader of its files (`folder`), and the temporary folders of runs in progress (`temp`). Imports nothing heavy."""
