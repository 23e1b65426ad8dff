namespace DirBackup.Restore;

/// <summary>A device's chain served as a read-only regular file holding the raw disk, until stopped.</summary>
public interface IChainExport
{
    string Path { get; }

    Task StopAsync();
}
