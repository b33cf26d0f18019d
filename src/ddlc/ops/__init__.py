"""ddlc.ops"""
