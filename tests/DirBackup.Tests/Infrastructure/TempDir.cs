namespace DirBackup.Tests.Infrastructure;

/// <summary>A private directory under /tmp, removed with everything in it.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir(string prefix = "dirbackup-test")
    {
        Path = Directory.CreateTempSubdirectory(prefix + "-").FullName;
    }

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
