"""ddlc.checkpoint"""
