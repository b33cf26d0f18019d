"""ddlc.monitor"""
