"""tuneforge.models"""
