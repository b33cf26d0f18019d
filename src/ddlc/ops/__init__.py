"""ddlc.ops: operating a cluster — preflight checks (`ddlc doctor`) and teardown planning (`ddlc cluster down`)."""
