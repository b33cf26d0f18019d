"""ddlc.launch"""
