"""ddlc.runtime"""
