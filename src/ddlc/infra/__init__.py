"""ddlc.infra"""
