namespace DirBackup.Restore;

/// <summary>One qcow2 image of a device's chain, base first, with what its header must say about its backing file.</summary>
public sealed record ChainLayer(string Path, string Backup, long Size, string? ExpectedBacking);
